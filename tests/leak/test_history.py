"""History at the three levels (FHIR R4 http.html#history): no version of a p1 record, no
tombstone naming one, and no answer that tells a hidden record from a missing one."""

from __future__ import annotations

from tests.leak.world import (
    World,
    assert_same_not_found,
    assert_withheld,
    ids_in,
)


async def test_instance_history_of_p1_releases_none_of_its_versions(world: World) -> None:
    """The practitioner asks for the history of Patient/p1 and of p1's Observation: every
    version is p1's and must be withheld."""
    for path in ("/fhir/Patient/p1/_history", "/fhir/Observation/obs-p1/_history"):
        got = await world.http.get(path, headers=world.dr)
        assert_withheld(world, got)


async def test_instance_history_of_p1_answers_like_a_missing_record(world: World) -> None:
    """The practitioner compares the history of Patient/p1 with that of a patient who does not
    exist: an empty 200 history for one and a 404 for the other tells it p1 exists."""
    got = await world.http.get("/fhir/Patient/p1/_history", headers=world.dr)
    absent = await world.http.get("/fhir/Patient/nope/_history", headers=world.dr)
    assert_same_not_found(world, got, absent)


async def test_history_of_a_p2_record_hides_the_version_filed_under_p1(world: World) -> None:
    """obs-moved was p1's in version 1 and is p2's in version 2: its history, visible to the
    practitioner, must carry version 2 only."""
    got = await world.http.get("/fhir/Observation/obs-moved/_history", headers=world.dr)
    assert got.status_code == 200
    versions = [e["resource"]["meta"]["versionId"] for e in got.json()["entry"]]
    assert versions == ["2"]
    assert_withheld(world, got)


async def test_type_history_releases_no_p1_version(world: World) -> None:
    """``Observation/_history`` lists every version of every Observation: p1's must go, p2's
    stay. The whole history fits one page, so ``total`` is the versions released, never the
    upstream's count of all of them."""
    got = await world.http.get("/fhir/Observation/_history", headers=world.dr)
    assert got.status_code == 200
    assert "Observation/obs-p2" in ids_in(got.json())
    assert got.json()["total"] == len(got.json()["entry"])
    assert_withheld(world, got)


async def test_system_history_releases_no_p1_version(world: World) -> None:
    """``_history`` at the base lists every version of everything, Patients, contained and
    Bundle resources included."""
    got = await world.http.get("/fhir/_history", headers=world.dr)
    assert got.status_code == 200
    assert "Patient/p2" in ids_in(got.json())
    assert_withheld(world, got)


async def test_a_deleted_p1_record_leaves_no_tombstone_in_history(world: World) -> None:
    """After p1's Observation is deleted, the type history carries an entry without a
    resource whose ``request.url`` names ``Observation/obs-p1``: the name alone reveals it."""
    world.fhir.put(None, "Observation/obs-p1")
    got = await world.http.get("/fhir/Observation/_history", headers=world.dr)
    assert got.status_code == 200
    assert_withheld(world, got)


async def test_patient_p2_cannot_ask_for_type_history(world: World) -> None:
    """Type history cannot be narrowed to p2's compartment: patient p2 must be refused before
    anything is forwarded, not handed every patient's versions."""
    got = await world.http.get("/fhir/Observation/_history", headers=world.p2)
    assert got.status_code == 403
    assert world.sent == []
