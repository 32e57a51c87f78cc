# Over-the-air update (the `ota` command): not available in this firmware yet. The command is
# refused (`rej`), so the operator sees at once that the node cannot take it; a field engineer
# updates over the console (docs/firmware.md, "Updating").


def start(node, args):
    node.log_once("ota %s: not supported by this firmware" % (args.get("version"),))
    return False
