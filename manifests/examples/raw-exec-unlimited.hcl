# A raw_exec task with no hard memory limit (memory_max = -1): runs on the host, as root, unconfined.
job "raw-exec-unlimited" {
  group "ticker" {
    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "ticker" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "while true; do echo tick $(date +%s); sleep 5; done"]
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "2s"

      resources {
        memory     = 32
        memory_max = -1
      }

      logs {
        max_files     = 3
        max_file_size = 1
      }
    }
  }
}
