"""The edge agent as a running process: capture → codec → spool → publisher, under systemd."""
