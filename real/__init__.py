"""The live Python servers of each architecture, the file-set generator and httperf driving."""
