package pgserver

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// errEmptyDatabase is returned by WithDatabase for an empty database name,
// which libpq would silently replace with the user name.
var errEmptyDatabase = errors.New("empty database name")

// WithDatabase returns dsn with its database replaced by dbname (or added, if
// dsn names none). Both forms libpq and lib/pq accept are supported and kept:
//
//   - URL form, postgres://user@host:port/db?opts (or postgresql://): the path
//     is replaced, user, host and query are kept as they were;
//   - key=value form, "host=h dbname=db": the dbname pair is replaced or
//     appended; values are quoted the way libpq reads them.
func WithDatabase(dsn, dbname string) (string, error) {
	if dbname == "" {
		return "", errEmptyDatabase
	}
	if !utf8.ValidString(dbname) {
		return "", fmt.Errorf("database name %q is not valid UTF-8", dbname)
	}
	if isURLDSN(dsn) {
		u, err := parseURLDSN(dsn)
		if err != nil {
			return "", err
		}
		u.Path = "/" + dbname
		// PathEscape also escapes "/", which Path alone would leave as is
		// and libpq would then read as part of the host or path.
		u.RawPath = "/" + url.PathEscape(dbname)
		return u.String(), nil
	}

	pairs, err := parseKeyValueDSN(dsn)
	if err != nil {
		return "", err
	}
	replaced := false
	for i := range pairs {
		if pairs[i].key == "dbname" {
			pairs[i].value = dbname
			replaced = true
		}
	}
	if !replaced {
		pairs = append(pairs, dsnPair{key: "dbname", value: dbname})
	}
	return formatKeyValueDSN(pairs), nil
}

// isURLDSN reports whether dsn is in URL form, by the prefixes libpq accepts.
func isURLDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// parseURLDSN parses a URL-form DSN.
func parseURLDSN(dsn string) (*url.URL, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DSN URL: %w", err)
	}
	return u, nil
}

// dsnPair is one keyword and its unquoted value in a key=value DSN.
type dsnPair struct {
	key, value string
}

// parseKeyValueDSN splits a key=value DSN into its pairs, in order, with the
// rules of libpq (and lib/pq): spaces around "=" are allowed, values may be
// single-quoted, and a backslash escapes the next character.
func parseKeyValueDSN(dsn string) ([]dsnPair, error) {
	s := []rune(dsn)
	i := 0
	skipSpaces := func() {
		for i < len(s) && unicode.IsSpace(s[i]) {
			i++
		}
	}
	var pairs []dsnPair
	for {
		skipSpaces()
		if i >= len(s) {
			return pairs, nil
		}
		start := i
		for i < len(s) && !unicode.IsSpace(s[i]) && s[i] != '=' {
			i++
		}
		key := string(s[start:i])
		skipSpaces()
		if i >= len(s) || s[i] != '=' || key == "" {
			return nil, fmt.Errorf("parse DSN: missing \"=\" after %q", key)
		}
		i++ // the "="
		skipSpaces()

		var value []rune
		if i < len(s) && s[i] == '\'' {
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("parse DSN: unterminated quoted value for %q", key)
				}
				r := s[i]
				i++
				if r == '\'' {
					break
				}
				if r == '\\' {
					if i >= len(s) {
						return nil, fmt.Errorf("parse DSN: unterminated quoted value for %q", key)
					}
					r = s[i]
					i++
				}
				value = append(value, r)
			}
		} else {
			for i < len(s) && !unicode.IsSpace(s[i]) {
				r := s[i]
				i++
				if r == '\\' {
					if i >= len(s) {
						return nil, fmt.Errorf("parse DSN: missing character after backslash in value for %q", key)
					}
					r = s[i]
					i++
				}
				value = append(value, r)
			}
		}
		pairs = append(pairs, dsnPair{key: key, value: string(value)})
	}
}

// formatKeyValueDSN joins pairs back into a DSN, quoting the values that need
// it (empty, or holding a space, quote or backslash).
func formatKeyValueDSN(pairs []dsnPair) string {
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.key)
		b.WriteByte('=')
		if p.value != "" && !strings.ContainsFunc(p.value, func(r rune) bool {
			return unicode.IsSpace(r) || r == '\'' || r == '\\'
		}) {
			b.WriteString(p.value)
			continue
		}
		b.WriteByte('\'')
		for _, r := range p.value {
			if r == '\'' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('\'')
	}
	return b.String()
}

// redact returns dsn with its password masked, so that it can be logged.
func redact(dsn string) string {
	if isURLDSN(dsn) {
		u, err := parseURLDSN(dsn)
		if err != nil {
			return "(unparsable DSN)"
		}
		return u.Redacted()
	}
	pairs, err := parseKeyValueDSN(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	for i := range pairs {
		if pairs[i].key == "password" {
			pairs[i].value = "xxxxx"
		}
	}
	return formatKeyValueDSN(pairs)
}
