"""The version the API serves: the hot swap (engine), one loaded version (version), the changes this process
writes to it (writes: adds, deletes, rollbacks), compaction of its delta, and the image folder on disk
(collection, formats).

May import: index, trainer, durable. Never the API, the jobs or the launcher.
"""
