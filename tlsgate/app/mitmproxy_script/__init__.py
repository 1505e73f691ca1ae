"""The folder stock mitmproxy loads tlsgate's add-ons from: `mitmdump -s "$(tlsgate script-path)"`.

It holds one script and nothing else, on purpose. mitmproxy puts a script's folder at the
front of `sys.path` to load it and never takes it off again (`load_script` saves `sys.path`
by reference, so its restore is a no-op). From `tlsgate/addons/` that made `policy`, `state`,
`metrics`, `limits`, `console` and twenty more of tlsgate's modules importable as top-level
names for the life of the process, shadowing a PyPI package of the same name that another
script imports; from here it adds only `tlsgate_addons`.
"""
