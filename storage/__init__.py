"""The storage layer: the run's filesystem (fsspec URIs), the one atomic writer, file identity,
temp-name rules and the complete run layout. Every other package imports it; it imports none of them."""
