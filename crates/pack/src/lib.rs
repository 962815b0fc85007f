//! Parallel, streaming, bounded-memory writer of cloop-family images.
