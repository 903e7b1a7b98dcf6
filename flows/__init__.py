"""One module per procedure, one top-level @flow each, named as in the runbook."""
