# twistd -ny tapfiles/easymesh.tac
#
# Runs the same sidecar as `twistd -n easymesh`, with the plugin's Options
# and makeService.  Options come from EASYMESH_ARGS (as on the command line)
# and/or EASYMESH_CONFIG (a YAML config file).
import os
import shlex

from twisted.application.service import Application

from easymesh.tap import Options, makeService

options = Options()
args = shlex.split(os.environ.get("EASYMESH_ARGS", ""))
if os.environ.get("EASYMESH_CONFIG"):
    args += ["--config", os.environ["EASYMESH_CONFIG"]]
options.parseOptions(args)

application = Application("easymesh")
makeService(options).setServiceParent(application)
