//! Random-access reader of cloop-family images with a shared block cache.
