# The agent config `make run` uses for the bundled examples: raw_exec is off by default (as in Nomad),
# so the raw_exec example needs it enabled.
client {
  gc_grace = "1m"
}

plugin "raw_exec" {
  config {
    enabled = true
  }
}

# The exec2 example narrows its view further with a task-level `unveil`, which Nomad's exec2 allows only when
# the operator opts in.
plugin "exec2" {
  config {
    unveil_by_task = true
  }
}
