"""Reports and CI gates over findings files: HTML, JUnit, SARIF, Markdown, JSON, and run-to-run diffs.

Pure Python over the JSON-lines findings format: no mitmproxy, no proxy
internals, so reports can be made on any machine from a copied findings file.
"""
