"""API-format prompt surgery, and the UI format turned into it.

:mod:`.workflow` finds our nodes, prunes and builds each unit's worker prompt and the master's marked prompt;
:mod:`.values` reads and types each participant's Multi-GPU Value literal (the node itself is in
:mod:`..collector.nodes`); :mod:`.ui_format` reads and checks a workflow saved by the UI, and :mod:`.ui_workflow`
converts it into the API format through a master's ``/object_info``, as the frontend does.
"""
