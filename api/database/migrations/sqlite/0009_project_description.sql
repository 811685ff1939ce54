-- A project's optional description (issue 11: a field added to a record end to end).
ALTER TABLE projects ADD COLUMN description TEXT;
