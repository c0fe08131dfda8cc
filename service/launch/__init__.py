"""`npid up`: the whole product on one machine. Starts Redis (when none answers), a worker, the API and the folder
watcher as supervised child processes, trains the first version with a progress bar, then improves it in the
background.

Talks to the API over HTTP like any client. May import: service.jobs (the recipe's banner, job vocabulary),
service.settings, trainer.
"""
