"""Entry points and their plumbing: parse args -> typed config -> call the libraries (storage, queries, curation, pretrain, contamination).

Importing the package sets the project's environment defaults (:func:`pipelines.runtime.configure_environment`:
Ray's token authentication among them) before anything imports Ray: Ray reads ``RAY_AUTH_MODE`` when it is
imported, so a default set later would start a cluster its own client cannot authenticate to.
"""

from pipelines.runtime import configure_environment

configure_environment()
