# A fork bomb: every process forks forever. runcell stops it at the task limit, reports
# "processes", and kills every process it made.
import os

while True:
    os.fork()
