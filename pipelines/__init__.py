"""Entry points and their plumbing: parse args -> typed config -> call the libraries (storage, queries, curation, pretrain, contamination)."""
