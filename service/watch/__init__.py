"""The folder watcher (`npid watch`): a process of its own that keeps the live index in step with the image folder.

Files added, replaced, moved or removed under NPID_COLLECTION_ROOT are noticed (inotify through watchfiles, and
a periodic full rescan where no events arrive), left to settle, and applied with the live model as O(delta)
versions (index `ArtifactStore.add` / `replace` / `remove`), without a training job. Exactly one watcher
applies: it holds a Redis lock with a TTL it renews; a second one waits.

    cli.py       `npid watch`: settings, the lock, the loop; idle when NPID_WATCH=0
    lock.py      the one-watcher Redis lock (SET NX PX, compare-and-extend, compare-and-delete)
    folder.py    which files belong to the collection, their stat, a walk of the folder
    events.py    inotify events (watchfiles) collected on a thread
    settle.py    a noticed path waits until its size and mtime (or its absence) hold still
    plan.py      settled files against the live version: move, replace, add, remove, or leave out
    apply.py     reading, embedding and publishing a plan, redone when another writer published first
    watcher.py   the loop: events, rescans, settling, applying, progress (service/live/watching.py)

May import: service.live, service.settings, index, trainer, durable. Nothing imports it but service/cli.py and
service/launch.
"""
