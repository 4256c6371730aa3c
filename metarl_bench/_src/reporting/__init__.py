"""Tables, figures, the HTML report and paper reproductions, drawn from results; imports the layers below."""
