"""Analysis: statistics over stored results and the reports made of them.

One-way within the room: ``stats`` -> ``pooling`` -> ``labels`` -> ``leaderboard`` ->
``reproduction`` and ``formatting`` -> ``markdown``, ``latex``, ``html`` (with ``figures``) ->
``report`` (writes the files). ``comparison`` decides a regression check. Nothing here trains or
imports the run room.
"""
