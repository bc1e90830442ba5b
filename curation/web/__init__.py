"""The web pool: (image URL, alt text) pairs extracted from WARC / Common Crawl WAT files."""
