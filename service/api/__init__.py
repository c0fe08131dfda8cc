"""The HTTP API process (`npid serve`, compose's `api`): FastAPI routes, request and response schemas, the one
error-to-HTTP mapping, API keys, rate and body limits, metrics, upload checks and decoding, the web page.

May import: service.live (the served version), service.jobs (job records and the queue, to submit and read jobs),
service.settings, index, trainer. Imported by nothing in service/ but the `npid` entry point.
"""
