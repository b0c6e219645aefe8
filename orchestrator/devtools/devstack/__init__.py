"""What `manage.py up` (`make run`) runs the system with on one machine: the embedded PostgreSQL
and Valkey servers, the run folder's lock and pid files, and the supervisor that restarts
what may be restarted. Development tooling: nothing in the product imports it."""
