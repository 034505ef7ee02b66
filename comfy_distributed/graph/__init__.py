"""API-format prompt surgery, and the UI format turned into it.

:mod:`.workflow` finds our nodes, prunes and builds each unit's worker prompt and the master's marked prompt;
:mod:`.values` is the Multi-GPU Value node and reads each participant's literal; :mod:`.ui_workflow` converts a
workflow saved by the UI into the API format through a master's ``/object_info``, as the frontend does.
"""
