"""The service: the processes that wire the trainer and the index into a product, one package each.

    service/api/      the HTTP API process (`npid serve`): routes, schemas, errors, auth, limits, metrics, page
    service/live/     the version the API serves: hot swap, adds and deletes, compaction, the image folder
    service/jobs/     the worker process (`npid worker`): job records, queue, the pipeline to a published version
    service/watch/    the folder watcher process (`npid watch`): the image folder's changes into the live index
    service/launch/   `npid up`: starts and supervises Redis, the worker, the API and the watcher; the first version
    service/settings.py, service/cli.py   NPID_* settings, the `npid` entry point

Calls flow one way: launch -> api -> jobs -> live -> index/trainer, and watch -> live (docs/architecture.md).
"""
