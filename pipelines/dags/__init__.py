"""Airflow 3 DAGs (the ``airflow`` extra): ``wit_curation`` and ``wit_pretrain``, and the Ray job operator."""
