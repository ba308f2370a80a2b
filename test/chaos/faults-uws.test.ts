import { uwsUnderTest } from '../transport-under-test.ts';
import { faultScenarios } from './faults.ts';

faultScenarios(await uwsUnderTest());
