"""The app layer (`trapkit.app`): the `trapkit` command and `trapkit quickstart`, apps over every stage.

It may import the core and every stage; nothing imports it. `python -m trapkit.app.cli` runs the command.
"""
