# A periodic batch job: on one node tasksd runs it once, at load, and says so.
job "cron-like" {
  type = "batch"

  periodic {
    crons            = ["*/15 * * * *"]
    prohibit_overlap = true
  }

  group "tick" {
    task "tick" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo tick > ${NOMAD_ALLOC_DIR}/data/ticked"]
      }
    }
  }
}
