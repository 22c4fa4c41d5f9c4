# A one-shot raw_exec batch job, written the way Nomad's getting-started examples are.
job "hello-batch" {
  datacenters = ["dc1"]
  type        = "batch"

  group "say" {
    count = 2

    task "hello" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo \"hello from ${NOMAD_ALLOC_INDEX} on ${node.unique.name}\" > ${NOMAD_ALLOC_DIR}/data/hello.txt"]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
