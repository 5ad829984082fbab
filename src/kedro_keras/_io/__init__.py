"""Where bytes live: a file on any fsspec filesystem (``Location``), read
and written in bounded memory, with bounded waits and progress. Knows
nothing of Keras."""
