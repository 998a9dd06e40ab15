"""What each exit code of `batchrun run` means, in the words the summary and `run --help` use."""

EXIT_MEANINGS = {
    0: "all jobs finished, none failed",
    1: "finished; some jobs failed permanently (see `batchrun export --errors`)",
    2: "usage error (bad flag, no keys, no base URL, malformed key)",
    3: "stopped with work left (signal, deadline, spend cap, keys held by another runner); run again to continue",
    4: "no usable API key left or the organisation's budget is spent; the remaining jobs stay queued",
    5: "the provider is unreachable or misconfigured (wrong base URL)",
}
