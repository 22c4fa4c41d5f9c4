# An exec service with cluster-only blocks (update, service, constraint) that tasksd loads with warnings.
job "web-exec" {
  datacenters = ["dc1"]
  type        = "service"

  update {
    max_parallel = 1
    stagger      = "30s"
  }

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "web" {
    network {
      mode = "host"
      port "http" {}
    }

    service {
      name = "web"
      port = "http"
    }

    task "server" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "cat local/index.html > ${NOMAD_ALLOC_DIR}/data/served; exec sleep 3600"]
      }

      template {
        destination = "local/index.html"
        data        = <<EOH
<h1>{{ env "NOMAD_JOB_NAME" }} / {{ env "NOMAD_TASK_NAME" | toUpper }}</h1>
EOH
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
