# An exec2 task: Landlock lets the server read its task dir and /etc/mime.types, and little else.
job "http-exec2" {
  group "web" {
    task "http" {
      driver = "exec2"

      config {
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "8080", "--directory", "${NOMAD_TASK_DIR}"]
        unveil  = ["r:/etc/mime.types"]
      }

      template {
        data        = <<EOF
<html><body>served by tasksd task {{ env "NOMAD_TASK_NAME" }} of job {{ env "NOMAD_JOB_NAME" }}</body></html>
EOF
        destination = "local/index.html"
      }

      resources {
        cpu    = 200
        memory = 64
      }
    }
  }
}
