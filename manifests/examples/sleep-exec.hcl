# An exec task: /bin/sleep in its own mount, pid and ipc namespaces, chrooted onto the task directory.
job "sleep-exec" {
  type = "service"

  group "sleep" {
    task "sleep" {
      driver = "exec"

      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
