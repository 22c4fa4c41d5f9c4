# A service whose prestart task prepares data and a poststart task reports readiness; vault and
# reschedule are cluster features tasksd warns about.
job "db-migrate" {
  datacenters = ["dc1"]

  reschedule {
    attempts = 0
  }

  group "db" {
    task "migrate" {
      driver = "raw_exec"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        command = "/bin/sh"
        args    = ["-c", "mkdir -p ${NOMAD_ALLOC_DIR}/data/db && echo v2 > ${NOMAD_ALLOC_DIR}/data/db/schema"]
      }
    }

    task "db" {
      driver = "raw_exec"

      vault {
        policies = ["db"]
      }

      meta {
        role = "primary"
      }

      config {
        command = "/bin/sh"
        args    = ["-c", "test \"$(cat ${NOMAD_ALLOC_DIR}/data/db/schema)\" = v2 && echo $NOMAD_META_role > ${NOMAD_ALLOC_DIR}/data/role && exec sleep 3600"]
      }
    }

    task "announce" {
      driver = "raw_exec"

      lifecycle {
        hook = "poststart"
      }

      config {
        command = "/bin/sh"
        args    = ["-c", "echo ready > ${NOMAD_ALLOC_DIR}/data/announced"]
      }
    }
  }
}
