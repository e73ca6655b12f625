//go:build !race

package testenv

// raceEnabled: the tests run without -race, and so do the programs [Program]
// builds.
const raceEnabled = false
