//! The `mkmodule` command line tool.

fn main() {}
