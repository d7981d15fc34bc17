"""Request limits shared by the command line and the router, in a module light enough for `maitred --help`."""

#: Largest request body accepted by default, in bytes (413 past it; `maitred router --max-body-bytes`).
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
