"""The scheduling cycle in the server, split by concern:

loop.py       Scheduler: the loop, the scheduler lease (fencing), the cycle's recipe
reconcile.py  executor reports -> containers; kills; ended apps; restart recovery
outcomes.py   the one table: stop reason + containers' causes -> what becomes of an app
admit.py      queue heads, the snapshot, and decide()'s decisions carried out
plans.py      each container's plan, and torch.distributed's rendezvous for gangs
effects.py    executor calls held until the transaction that decided them commits
"""
