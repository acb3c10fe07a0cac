"""The chaos run: many invoices through the real service while it is killed and Amili misbehaves.

``amili-registrar chaos`` sends N invoice-created events (5% of them sent again, 1% poison) to a
real Kafka broker, runs the service as a subprocess and kills it with SIGKILL at random moments
(restarting it at once), while the Amili emulator, also a subprocess, answers 5% of requests with
a 5xx (half of them after storing the registration), holds 2% back after storing them (past the
service's timeout, or dropping the connection halfway) and throttles 1% with 429. When every
invoice has its result it stops killing, lets the service finish, and checks the outcome against
Amili's records and the topics: one registration per invoice, a result for every invoice, a dead
letter for every poison event and for nothing else. It prints a table and returns 1 if a check
failed.

Each life of the service lasts a random time (``kill_every_min``..``kill_every_max`` s) counted
from its first sign of work (a result or a dead letter), so that every life does some: a
SIGKILLed consumer stays in its group until its session times out (6 s as tuned here, 10 s by
default), and the next one is only given partitions then.

Several replicas (``replicas``) run in one consumer group, each with its own HTTP port and log file
(one replica needs no more than SQLite; several need the PostgreSQL ledger). A kill then takes one
replica at random. Without kills (``kills=False``) a replica that exits is counted and started
again, as an orchestrator would.

A broker outage (``broker_outage`` s) stops the run's own broker ``outage_after`` s after the first
result or dead letter, with SIGTERM (a controlled shutdown) or SIGKILL, while events are in flight
and results pending, and starts it again on the same port and data dir after that long; the
service is never restarted for it. The run's producer pauses meanwhile (and carries on at its
rate), and its topic reader reconnects. Besides the usual checks, the report then tells how many
log lines each replica wrote from the stop until 30 s after the broker was back, how much CPU each
used while the broker was away, and how long every result took to come in after it was back.

One concern per module:

- ``plan.py``: the events to send, seeded, and the outcome each invoice must come to.
- ``run.py``: the run itself (``run_chaos``, ``ChaosOptions``): broker, emulator, replicas, sending,
  kills, the broker outage, and the report.
- ``verdict.py``: the evidence the run gathers and the checks held against the plan.
- ``topics.py``: the run's topics, and reading the result and dead-letter topics for the whole run.
- ``processes.py``: the replicas and what is measured of them (CPU, log lines).

Starting the broker, the emulator and the replicas, creating the topics and reading them back is the
harness's (``devkit.harness``), which the benchmarks use too.
"""
