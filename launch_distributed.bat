@echo off
rem ComfyUI-Distributed launcher: runs "comfy-distributed MODE ..." with ComfyUI's own Python.
rem Keep it in the extension's folder (ComfyUI\custom_nodes\ComfyUI-Distributed) or copy it into ComfyUI's folder.
rem   launch_distributed.bat all-slow        no argument: a menu
rem Modes: master, workers, all-fast, all-slow, stop [NAME], status, restart NAME, logs NAME, run WORKFLOW.json,
rem        agent, token, venv, update, update-nodes (details: launch_distributed.bat --help)
setlocal EnableExtensions
set "HERE=%~dp0"
set "EXT="
if exist "%HERE%comfy_distributed\__init__.py" set "EXT=%HERE%."
if not defined EXT for /d %%D in ("%HERE%custom_nodes\*") do if exist "%%~fD\comfy_distributed\__init__.py" if not defined EXT set "EXT=%%~fD"
if not defined EXT (
    echo launch_distributed.bat: ComfyUI-Distributed not found: keep this file in its folder, or in ComfyUI's folder next to custom_nodes 1>&2
    if "%~1"=="" pause
    exit /b 1
)
for %%I in ("%EXT%") do set "EXT=%%~fI"
for %%I in ("%EXT%\..\..") do set "ROOT=%%~fI"
set "PY="
if exist "%ROOT%\venv\Scripts\python.exe" set "PY=%ROOT%\venv\Scripts\python.exe"
if not defined PY if exist "%ROOT%\.venv\Scripts\python.exe" set "PY=%ROOT%\.venv\Scripts\python.exe"
if not defined PY if exist "%ROOT%\..\python_embeded\python.exe" set "PY=%ROOT%\..\python_embeded\python.exe"
if not defined PY if exist "%ROOT%\python_embeded\python.exe" set "PY=%ROOT%\python_embeded\python.exe"
if not defined PY set "PY=python"
rem the hints it prints name this file
if not defined COMFY_DISTRIBUTED_COMMAND set "COMFY_DISTRIBUTED_COMMAND=%~0"
rem -c instead of -m: the portable build's python_embeded ignores PYTHONPATH
if exist "%ROOT%\main.py" (
    "%PY%" -c "import sys; sys.path.insert(0, sys.argv.pop(1)); from comfy_distributed.cli import main; sys.exit(main(sys.argv[1:]))" "%EXT%" --comfyui "%ROOT%" %*
) else (
    "%PY%" -c "import sys; sys.path.insert(0, sys.argv.pop(1)); from comfy_distributed.cli import main; sys.exit(main(sys.argv[1:]))" "%EXT%" %*
)
set "CODE=%ERRORLEVEL%"
rem started by a double click: keep the window open so that the messages can be read
if "%~1"=="" pause
exit /b %CODE%
