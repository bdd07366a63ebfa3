"""How a value reaches a shell: sandboxed Jinja templates, the bash lexer, the judge of simple commands, quoting."""
