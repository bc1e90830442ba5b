"""Demo and test tooling, apart from the product: the real sample data (``sample_data``,
``sample_derived``), the loopback image server (``serve_images``) and a throw-away local Ray head
for ``ray job submit`` (``submit_local``)."""
