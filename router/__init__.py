"""maitred.router: an OpenAI-compatible reverse proxy that balances requests over a pool's live endpoints.

The router's only input is a routing table (:mod:`maitred.router.table`), read from a file or a
ConfigMap. It never knows about CRDs.
"""
