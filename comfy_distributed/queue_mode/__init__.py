"""Queue mode: whole prompts go where they run soonest, so a queue spreads over every GPU.

:mod:`.routing` ranks the participants (a pure function); :mod:`.balancer` finds those that can run a prompt and
forwards it (a job of one unit that the candidates take in turn, its stand-in node waiting in the master's
queue); :mod:`.outputs` fetches what the forwarded prompt made back into the master's folders, and :mod:`.files`
says which names, types and bytes a worker's file may have and writes it only into its own folder;
:mod:`.nodes` is the stand-in node that waits in the master's queue and delivers what the worker made.
"""
