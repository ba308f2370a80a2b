import { wsUnderTest } from '../transport-under-test.ts';
import { faultScenarios } from './faults.ts';

faultScenarios(wsUnderTest);
