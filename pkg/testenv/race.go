//go:build race

package testenv

// raceEnabled: the tests run with -race, so [Program] builds with -race.
const raceEnabled = true
