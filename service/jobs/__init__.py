"""Background jobs and the worker process (`npid worker`): job records with their vocabulary, lock and lease
(store, vocabulary), the Celery queue and worker, and the pipeline from a request to a published version
(pipeline, reporter, promotion, warm start, run folders).

May import: service.live (collection files to embed), service.settings, index, trainer. Never the API or the
launcher; the API imports the store and the queue to submit and read jobs.
"""
