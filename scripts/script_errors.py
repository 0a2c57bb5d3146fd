"""Bad input ends every script in scripts/ with one line naming the problem and exit code 1, never a
traceback: the readers raise BadInput with a message that names the file, and run_script turns it, and
the operating system's errors (no such file, permission denied, not a directory, disk full), into
"error: ..." lines.

    if __name__ == "__main__":
        run_script(main)
"""
import sys


class BadInput(ValueError):
    """Input the script cannot use; the message names the file or argument and what is wrong."""


def run_script(main):
    try:
        main()
    except BadInput as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"error: {where}{e.strerror or e}")
    except KeyboardInterrupt:
        sys.exit("error: interrupted")
