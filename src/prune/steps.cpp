// The compression pipeline (issue 4) lives in this folder.
