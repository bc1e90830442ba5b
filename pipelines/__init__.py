"""Entry points: parse args -> typed config -> call the libraries (queries, curation, pretrain)."""
